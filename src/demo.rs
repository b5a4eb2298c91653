//! The built-in demo MCP child.
