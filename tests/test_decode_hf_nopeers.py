"""fastdl.decode.hf without torch or transformers: the module imports; using it says what
to install."""
import importlib
import sys

import pytest


@pytest.mark.parametrize("missing", ["torch", "transformers"])
def test_import_works_and_use_says_what_to_install(monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)        # `import missing` now fails
    monkeypatch.delitem(sys.modules, "fastdl.decode.hf", raising=False)
    hf = importlib.import_module("fastdl.decode.hf")
    with pytest.raises(ImportError, match=r"pip install 'fastdl\[peers\]'.*torch transformers"):
        hf.CausalLM(object())
