"""The reference interpreter of SPEC.md, the oracle of the differential tests."""
