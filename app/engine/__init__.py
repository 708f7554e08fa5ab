"""One engine process per GPU, fed by every HTTP worker of the pod (ENGINE_PROCESS).

wire: the messages and their framing; arena: a worker's shared memory and its allocator; payloads: items'
bytes in the arena, both ways; front: the model as a worker prepares items for it; link and client: a
worker's connections to the engines; server and process: the engine process; board: the engines'
notices; supervise: starting, watching and stopping them from the pod's supervisor. How it fits
together: docs/performance.md (one engine per GPU).
"""
