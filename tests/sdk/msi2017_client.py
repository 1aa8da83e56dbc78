"""A managed-identity client of App Service's 2017-09-01 protocol, written from its documentation
(what go-autorest ``adal`` and older SDKs speak): ``MSI_ENDPOINT`` and ``MSI_SECRET`` from the
environment, ``GET $MSI_ENDPOINT?resource=R&api-version=2017-09-01[&clientid=ID]`` with header
``secret: $MSI_SECRET``; the answer's ``expires_on`` is a UTC date ``MM/dd/yyyy hh:mm:ss tt
+00:00``.

Usage: python msi2017_client.py RESOURCE [CLIENT_ID]; prints {"token", "expires_on" (unix
seconds), "resource"} as JSON, or exits 1 printing the status and the error body.
"""

from __future__ import annotations

import calendar
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def main(argv: list[str]) -> int:
    """Fetch one token; 0 on success, 1 on an error answer."""
    resource, *rest = argv
    params = {"resource": resource, "api-version": "2017-09-01"}
    if rest:
        params["clientid"] = rest[0]
    url = os.environ["MSI_ENDPOINT"] + "?" + urllib.parse.urlencode(params)
    request = urllib.request.Request(url, headers={"secret": os.environ["MSI_SECRET"]})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        print(json.dumps({"status": exc.code, "body": exc.read().decode()}), file=sys.stderr)
        return 1
    expires = time.strptime(body["expires_on"], "%m/%d/%Y %I:%M:%S %p +00:00")
    result = {
        "token": body["access_token"],
        "expires_on": calendar.timegm(expires),
        "resource": body["resource"],
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
