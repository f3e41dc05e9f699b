"""`python -m mnist_cnn ARGS` is `mnist-cnn-train ARGS`."""

from mnist_cnn.cli.train import main

main()
