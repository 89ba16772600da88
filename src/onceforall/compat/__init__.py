"""Everything about the authors' package (``ofa``): their supernet checkpoints
(:mod:`.checkpoints`) and their specialised nets (:mod:`.specialized`), read as they are,
without executing code from their files."""
