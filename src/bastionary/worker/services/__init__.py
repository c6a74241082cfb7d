"""What each domain runs on the worker's Faust app: one service class per domain."""
