"""Batch workers: processes that take jobs from Redis and run them through the agent."""
