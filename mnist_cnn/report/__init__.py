"""What a trained model gets right and wrong: per-class metrics computed on the device, and the
figures (learning curves, confusion matrix, most confident mistakes) every run logs."""
