"""Value types shared by every layer: ids, request facts, decisions and rejections.

Nothing here performs I/O or imports gRPC, asyncio or Envoy types.
"""
