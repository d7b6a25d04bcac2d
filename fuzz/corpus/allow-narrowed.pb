
á"ÑÅGET
:schemehttps
:methodGET"
:path/r4/Observation?code=1234

:authorityfhir.example.org’
authorization√Bearer eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCIsImtpZCI6ImZ1enotZXMyNTYifQ.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlLm9yZyIsImF1ZCI6Imh0dHBzOi8vZmhpci5leGFtcGxlLm9yZy9yNCIsInN1YiI6InVzZXItMSIsImNsaWVudF9pZCI6ImZ1enotYXBwIiwic2NvcGUiOiJsYXVuY2gvcGF0aWVudCBwYXRpZW50LyouY3J1ZHMiLCJpYXQiOjE3NDk5OTk5NDAsImV4cCI6MTc1MDAwMzYwMCwianRpIjoiZnV6eiIsInBhdGllbnQiOiJhbGljZTcifQ.NZQLu_W_PbBN4aX0vsLpeDEn4gfYp-8Mkqa5QpI3VTMGdQJ2KFCor818U1R2NjRAHRKdNcOaVErlpQjLlwgx3w"/r4/Observation?code=1234*fhir.example.org2httpsRHTTP/1.1