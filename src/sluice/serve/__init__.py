"""The real-time server: the Open Inference Protocol (KServe v2, as NVIDIA Triton speaks it).

:mod:`sluice.serve.protocol` turns request bytes into tensors and tensors into response bytes,
with no HTTP framework in sight; the server drives it. Importing this package imports nothing
heavy.
"""
