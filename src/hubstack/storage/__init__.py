"""Storage connections: object storage (Azure Blob, S3) that users reach from servers by name."""
