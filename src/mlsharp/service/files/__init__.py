"""Job files (inputs, results) and shared blobs: ports, a local and an S3 adapter.

ports.py   Storage, Blobs, and what a download is (LocalFile, Redirect, Stream)
local.py   LocalStorage, LocalBlobs (embedded; also a shared folder when scaled out)
s3.py      S3Storage, S3Blobs (imported by the composition root only)
"""
