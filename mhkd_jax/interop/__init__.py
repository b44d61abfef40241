"""Import of PyTorch checkpoints (RepDistiller) into the NNX models."""
