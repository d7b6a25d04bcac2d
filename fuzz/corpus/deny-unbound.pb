
Ú"×ÔPOST
content-length9
:methodPOST
:schemehttps 
:path/r4/Observation/_search1
content-type!application/x-www-form-urlencoded

:authorityfhir.example.orgÕ
authorizationÃBearer eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCIsImtpZCI6ImZ1enotZXMyNTYifQ.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlLm9yZyIsImF1ZCI6Imh0dHBzOi8vZmhpci5leGFtcGxlLm9yZy9yNCIsInN1YiI6InVzZXItMSIsImNsaWVudF9pZCI6ImZ1enotYXBwIiwic2NvcGUiOiJsYXVuY2gvcGF0aWVudCBwYXRpZW50LyouY3J1ZHMiLCJpYXQiOjE3NDk5OTk5NDAsImV4cCI6MTc1MDAwMzYwMCwianRpIjoiZnV6eiIsInBhdGllbnQiOiJhbGljZTcifQ.NZQLu_W_PbBN4aX0vsLpeDEn4gfYp-8Mkqa5QpI3VTMGdQJ2KFCor818U1R2NjRAHRKdNcOaVErlpQjLlwgx3w"/r4/Observation/_search*fhir.example.org2httpsH	RHTTP/1.1b	code=1234