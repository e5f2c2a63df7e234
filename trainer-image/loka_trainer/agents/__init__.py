"""Agents that act in environments through tools: the MCP client, the episode runner and the agent loops."""
