"""mnist_cnn: Hydra-configured CNN experiments on MNIST-format data, tracked in MLflow."""
