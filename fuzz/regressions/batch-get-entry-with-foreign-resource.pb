
‚"ÿüPOST
:path/r4/
:methodPOST
content-length223

:authorityfhir.example.orgÕ
authorizationÃBearer eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCIsImtpZCI6ImZ1enotZXMyNTYifQ.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlLm9yZyIsImF1ZCI6Imh0dHBzOi8vZmhpci5leGFtcGxlLm9yZy9yNCIsInN1YiI6InVzZXItMSIsImNsaWVudF9pZCI6ImZ1enotYXBwIiwic2NvcGUiOiJsYXVuY2gvcGF0aWVudCBwYXRpZW50LyouY3J1ZHMiLCJpYXQiOjE3NDk5OTk5NDAsImV4cCI6MTc1MDAwMzYwMCwianRpIjoiZnV6eiIsInBhdGllbnQiOiJhbGljZTcifQ.i8jzKRf2D1jwbnLlCp8rzhz8n8TO1CZhQAbmX9AAm_Q4cBykj8N3Cdm3jCoPJJnMY3yWFntmy2-teE_SZNXhMw%
content-typeapplication/fhir+json
:schemehttps"/r4/*fhir.example.org2httpsHßRHTTP/1.1bß{"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "GET", "url": "Condition/alice7/_history"}, "resource": {"resourceType": "Condition", "id": "alice7", "subject": {"reference": "Patient/bob9"}}}]}