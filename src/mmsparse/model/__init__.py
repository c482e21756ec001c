"""The trainable model: dense heads, the shared sparse head and the temperature."""

from mmsparse.model.model import EncoderOutput, ModelOutput, SparseDenseModel, SparseHead

__all__ = ["EncoderOutput", "ModelOutput", "SparseDenseModel", "SparseHead"]
