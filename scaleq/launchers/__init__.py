"""How copies of the training loop start (Ray Train workers; torchrun and the deepspeed launcher need
no code here: they set RANK/WORLD_SIZE and the engine reads them). This package sits above
``scaleq.train``: it may import the loop, and neither ``scaleq.train`` nor ``scaleq.distributed``
imports it."""
