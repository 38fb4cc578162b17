"""Library code behind the LAION data CLIs in tools/laion_data_utils (one module per job)."""
