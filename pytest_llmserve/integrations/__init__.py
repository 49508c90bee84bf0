"""Other pytest plugins: pytest-xdist (GPU slices, merging workers' results) and pytest-benchmark."""
