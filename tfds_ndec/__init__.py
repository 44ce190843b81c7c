"""The `ndec` TFDS dataset: `import tfds_ndec` registers it with TFDS."""

from tfds_ndec.ndec_dataset_builder import Builder, NdecConfig, synthetic_config

__all__ = ["Builder", "NdecConfig", "synthetic_config"]
