//! HTTP/1.1 codec (pure: bytes in, heads and body events out; never touches a socket).
