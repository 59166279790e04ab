# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Real servers on loopback ports, shared by the demo, the tests and the benchmarks (none imports another).

- :mod:`testservers.processes` -- child processes: OpenSSH ``sshd`` (with OpenSSH's or Green End's
  sftp-server), ProFTPD's ``mod_sftp``, ``moto_server``; the unprivileged test user; connection helpers.
- :mod:`testservers.embedded_sftp` -- ``EmbeddedSFTPServer``: asyncssh in a thread of this process.
- :mod:`testservers.embedded_s3` -- ``EmbeddedS3Server``: moto's threaded server in this process.

Not part of the distributed package.
"""

from __future__ import annotations
