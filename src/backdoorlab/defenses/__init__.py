"""Defenses, each measured the same way: data scanners (before training), input filters
(at inference), model inspection, and the attack x defense matrix that runs them."""
