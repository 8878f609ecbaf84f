"""Images and videos for MiniMax-M3: formats told by content, the parts of a request that carry them, and the
intake checks every job and batch line passes."""
