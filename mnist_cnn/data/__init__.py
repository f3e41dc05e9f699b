"""MNIST-format data: dataset facts (no torch), IDX reading and checks, downloads, in-memory batches."""
