"""The `ndec` TFDS dataset: `import tfds_ndec` registers it with TFDS."""

from tfds_ndec.manual import NdecInputError
from tfds_ndec.ndec_dataset_builder import (Builder, NdecConfig, check_folder_origin, folder_config,
                                           real_config, synthetic_config)

__all__ = ["Builder", "NdecConfig", "NdecInputError", "check_folder_origin", "folder_config",
           "real_config", "synthetic_config"]
