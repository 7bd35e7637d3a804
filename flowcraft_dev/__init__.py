"""Dev-only tools, never deployed or packaged: the local emulator harness and fault injection."""
