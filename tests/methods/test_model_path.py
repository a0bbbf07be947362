"""``model.path``: a local folder that does not exist is named as such (not a hub-id error)."""
import pytest

from methods.models import load_model


@pytest.mark.parametrize("path", ["/no/such/llama", "./no_such_llama", "~/no_such_llama", "a/b/c"])
def test_missing_local_folder_is_named(path):
    with pytest.raises(FileNotFoundError, match="no such folder") as err:
        load_model({"name": "llama3_1_8b_instruct", "kind": "hf", "path": path, "dtype": "fp32"}, "cpu")
    assert repr(path) in str(err.value) and "Repo id" not in str(err.value)
