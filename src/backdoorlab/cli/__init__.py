"""The backdoorlab command line: each module parses one group of commands' options, calls the
library (`backdoorlab.api` and the modules below it) and prints; `common` holds the app and
`main`. Importing the package registers every command, in the order `--help` lists them."""

from . import run, train, evaluate, defend, audit, sample, serve, models, data  # noqa: F401, I001
from .common import app, main

__all__ = ["app", "main"]
