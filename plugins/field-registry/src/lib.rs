//! field-registry (being written).
