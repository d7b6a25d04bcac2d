
¦"£ POST
:schemehttps'
:path/r4/Patient/alice7/$everything!
originhttps://app.example.org$
access-control-request-methodGETÕ
authorizationÃBearer eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCIsImtpZCI6ImZ1enotZXMyNTYifQ.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlLm9yZyIsImF1ZCI6Imh0dHBzOi8vZmhpci5leGFtcGxlLm9yZy9yNCIsInN1YiI6InVzZXItMSIsImNsaWVudF9pZCI6ImZ1enotYXBwIiwic2NvcGUiOiJsYXVuY2gvcGF0aWVudCBwYXRpZW50LyouY3J1ZHMiLCJpYXQiOjE3NDk5OTk5NDAsImV4cCI6MTc1MDAwMzYwMCwianRpIjoiZnV6eiIsInBhdGllbnQiOiJhbGljZTcifQ.tjMh8lEXsZb27l-7tALhMtt6FONsjYXqyp0iyMpZNawcgBB98AhOxu-pZJuRfiJBaGPiD8SAPPbvHB8B8fKe1A+
content-typeapplication/json-patch+json

:authorityfhir.example.org
content-length256
:methodPOST"/r4/Patient/alice7/$everything*fhir.example.org2httpsH€RHTTP/1.1b€{"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "PATCH", "url": "Bundle/_search"}, "resource": {"resourceType": "Bundle", "status": "final", "code": {"text": "fuzz"}, "subject": {"reference": "Patient/bob9"}, "id": "alice7"}}]}