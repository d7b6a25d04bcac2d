
ê"çäPOST

:authorityfhir.example.org
content-length24
:methodPOST1
content-type!application/x-www-form-urlencoded 
:path/r4/Observation/_searchÕ
authorizationÃBearer eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCIsImtpZCI6ImZ1enotZXMyNTYifQ.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlLm9yZyIsImF1ZCI6Imh0dHBzOi8vZmhpci5leGFtcGxlLm9yZy9yNCIsInN1YiI6InVzZXItMSIsImNsaWVudF9pZCI6ImZ1enotYXBwIiwic2NvcGUiOiJsYXVuY2gvcGF0aWVudCBwYXRpZW50LyouY3J1ZHMiLCJpYXQiOjE3NDk5OTk5NDAsImV4cCI6MTc1MDAwMzYwMCwianRpIjoiZnV6eiIsInBhdGllbnQiOiJhbGljZTcifQ.tbnZhCz1i5z1PmWXtGzgNRuB0oYjg6N3mdHF6qxg53Wul8egKeszWXKzIsu2JYLyT_lMDinqr-Qa_m8u8gd_5w
:schemehttps"/r4/Observation/_search*fhir.example.org2httpsHRHTTP/1.1bpatient=alice7&code=1234