"""Feature stores: loading the paper's release format, bundles, vocabularies, synthetic data."""

from mmsparse.data.bundle import BackboneBundle
from mmsparse.data.formats import FeatureFile, read_feature_file, write_feature_parquet
from mmsparse.data.store import FeatureStore, Split, load_feature_store, write_release
from mmsparse.data.synthetic import SyntheticSpec, make_synthetic
from mmsparse.data.vocab import Vocabulary

__all__ = [
    "BackboneBundle",
    "FeatureFile",
    "FeatureStore",
    "Split",
    "SyntheticSpec",
    "Vocabulary",
    "load_feature_store",
    "make_synthetic",
    "read_feature_file",
    "write_feature_parquet",
    "write_release",
]
