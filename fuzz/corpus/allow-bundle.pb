
×"ÔÑPOST

:authorityfhir.example.org
content-length310
:methodPOST%
content-typeapplication/fhir+json
:path/r4Õ
authorizationÃBearer eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCIsImtpZCI6ImZ1enotZXMyNTYifQ.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlLm9yZyIsImF1ZCI6Imh0dHBzOi8vZmhpci5leGFtcGxlLm9yZy9yNCIsInN1YiI6InVzZXItMSIsImNsaWVudF9pZCI6ImZ1enotYXBwIiwic2NvcGUiOiJsYXVuY2gvcGF0aWVudCBwYXRpZW50LyouY3J1ZHMiLCJpYXQiOjE3NDk5OTk5NDAsImV4cCI6MTc1MDAwMzYwMCwianRpIjoiZnV6eiIsInBhdGllbnQiOiJhbGljZTcifQ.tbnZhCz1i5z1PmWXtGzgNRuB0oYjg6N3mdHF6qxg53Wul8egKeszWXKzIsu2JYLyT_lMDinqr-Qa_m8u8gd_5w
:schemehttps"/r4*fhir.example.org2httpsH¶RHTTP/1.1b¶{"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "GET", "url": "Observation?patient=alice7"}}, {"request": {"method": "POST", "url": "Observation"}, "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "hr"}, "subject": {"reference": "Patient/alice7"}}}]}