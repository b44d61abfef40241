"""The tests (pytest); ``torch_reference`` is the PyTorch code they compare with."""
