"""Analysis inputs: essays and RULER prompts cut to an exact token length."""
import pytest
import torch

from benchmarks.analysis.inputs import essay_tokens, input_tokens
from benchmarks.config_files import conf_yaml
from benchmarks.tasks.ruler import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(conf_yaml("model", "smollm2"))


def test_essays_is_the_default_input():
    assert input_tokens("essays") is essay_tokens


def test_ruler_input_is_the_prompt_tail_of_exact_length(tokenizer):
    ids = input_tokens("ruler:niah_multikey_2")(tokenizer, 700)
    assert ids.shape == (1, 700) and ids.dtype == torch.int64
    text = tokenizer.decode(ids[0])
    assert "One of the special magic numbers for" in text                    # the key-value haystack
    assert text.rstrip().endswith("mentioned in the provided text is")       # the question stays last
    assert not torch.equal(ids, essay_tokens(tokenizer, 700))


def test_unknown_inputs_raise():
    with pytest.raises(ValueError, match="unknown analysis input"):
        input_tokens("wikipedia")
    with pytest.raises(ValueError, match="unknown RULER task"):
        input_tokens("ruler:nope")
