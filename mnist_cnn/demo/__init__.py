"""`mnist-cnn-demo`'s page: draw a character, or upload a picture, and see several models read it (server)."""
