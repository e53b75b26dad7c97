"""A stand-in framework package for the interposer's call-site tests: its frames are what
`record --callsite-skip fakeframework` passes over."""
