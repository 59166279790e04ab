# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License
# is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.
"""Moved to :mod:`testservers.embedded_s3`; re-exported here for the demo's existing imports."""

from __future__ import annotations

from testservers.embedded_s3 import EmbeddedS3Server as EmbeddedS3Server

__all__ = ["EmbeddedS3Server"]
