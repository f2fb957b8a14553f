"""Dataset preparation: one canonical ``.npz`` per dataset from the first available source (OFFLINE.md)."""

from gbm.data.checksums import ChecksumError
from gbm.data.prepared import PreparedDataset, load_prepared, prepare_dataset, save_prepared, validate_split
from gbm.data.sources import DATASETS, DataUnavailableError, RawDataset, load_raw

__all__ = [
    "DATASETS",
    "ChecksumError",
    "DataUnavailableError",
    "PreparedDataset",
    "RawDataset",
    "load_prepared",
    "load_raw",
    "prepare_dataset",
    "save_prepared",
    "validate_split",
]
