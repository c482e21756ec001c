"""mmsparse: multimodal learned sparse retrieval with joint sparse-dense training.

Turns any vision-language dual encoder into a jointly trained sparse + dense text-image
retriever (Song et al., CIKM 2025), trained on precomputed features.
"""

__version__ = "0.1.0"
