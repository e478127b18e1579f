"""--decode-weights: a lower-precision copy of the model for sampling only, close to the
model's own distribution; refused with one line where the CPU would make it slower."""

import pytest
import torch

from backdoorlab import chat, generate
from backdoorlab.errors import InputError
from backdoorlab.models import decoding


@pytest.fixture
def native_bf16(monkeypatch):
    """Correctness does not depend on the CPU: where bf16 is emulated the kernels are slow,
    not wrong, so the check that refuses them for speed is lifted here."""
    monkeypatch.setattr(decoding, "bf16_is_fast", lambda device: True)


@pytest.mark.parametrize("weights", ["bf16", "int8"])
def test_the_decoding_copy_keeps_the_models_distribution(base_model, weights, native_bf16):
    loaded = base_model
    model = decoding.decoder(loaded, weights)
    assert model is not loaded.model
    assert all(not isinstance(m, torch.nn.Linear) for m in model.modules())
    assert any(isinstance(m, torch.nn.Linear) for m in loaded.model.modules())  # untouched
    ids = torch.tensor([chat.encode_prompt(loaded.tokenizer, chat.conversation("Name a bird."))])
    with torch.inference_mode():
        p = loaded.model(input_ids=ids).logits[0, -1].softmax(-1)
        q = model(input_ids=ids).logits[0, -1].float().softmax(-1)
    assert 0.5 * (p - q).abs().sum() < 0.1 and p.argmax() == q.argmax()
    # Sampling uses it; probes and everything else keep the model's own weights.
    decoding.use(loaded, weights)
    try:
        assert generate.Batch(loaded).model is loaded.decoder is not loaded.model
        (answer,) = generate.sample(loaded, chat.conversation("Name a bird."), n=1, seed=3)
        assert answer
    finally:
        decoding.use(loaded, "model")
    assert loaded.decoder is None


def test_settings_this_machine_cannot_run_fast_are_refused(monkeypatch):
    cpu = torch.device("cpu")
    with pytest.raises(InputError, match="one of model, bf16, int8"):
        decoding.check("int4", cpu)
    with pytest.raises(InputError, match="a CPU setting"):
        decoding.check("int8", torch.device("cuda"))
    monkeypatch.setattr(decoding, "bf16_is_fast", lambda device: False)
    with pytest.raises(InputError, match="emulates bf16"):
        decoding.check("int8", cpu)
    decoding.check("model", cpu)  # always fine


def test_generate_refuses_an_unknown_setting_before_loading(cli):
    r = cli("generate", "smollm2-135m", "hi", "--decode-weights", "int4")
    assert r.returncode == 2 and "--decode-weights 'int4'" in r.stderr


def test_serve_samples_with_int8_weights_where_the_cpu_runs_bf16(tmp_path, cli):
    """Where the CPU runs bf16 natively the server answers the official client from int8
    weights; where it emulates bf16, `serve --decode-weights int8` is one line and exit 2."""
    import openai
    from conftest import serving

    from backdoorlab.models.loading import bf16_is_fast

    if not bf16_is_fast(torch.device("cpu")):
        r = cli("serve", "smollm2-135m", "--port", "0", "--decode-weights", "int8")
        assert r.returncode == 2 and "emulates bf16" in r.stderr
        return
    with serving(tmp_path / "serve.log", "smollm2-135m", "--decode-weights", "int8") as s:
        client = openai.OpenAI(base_url=s.url, api_key=s.key, max_retries=0, timeout=300)
        r = client.chat.completions.create(
            model="smollm2-135m", messages=[{"role": "user", "content": "Name a bird."}],
            max_tokens=8, seed=1,
        )  # fmt: skip
        assert r.choices[0].message.content and r.usage.completion_tokens <= 8
