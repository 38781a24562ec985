"""Knowledge distillation: the course's losses with their exact gradients (``losses``),
intermediate-layer transfer for students of another width or depth (``transfer``), and the
loss object that trains a student through the one training loop (``trainer``)."""
