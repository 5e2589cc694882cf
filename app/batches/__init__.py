"""Batches: OpenAI's Batch API and image-question jobs over a Redis Streams job queue.

The data layer shared by the API (`app.api.batches_api`, which also runs the coordinator) and
the workers (`workers.consumer`): batch objects and statuses (`models`), Redis bookkeeping and
the queue's atomic operations (`store`, `keys`), input reading and validation (`jsonl`,
`validate`), output/error lines (`lines`), the coordinator that validates, feeds and writes
result files (`coordinator`), and image-question jobs (`jobs`). Settings: `config`.
"""
