//! Software checksum and segmentation (being written).
