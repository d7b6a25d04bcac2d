
—"ŒÀGET

:authorityfhir.example.orgü
authorizationçBearer eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCIsImtpZCI6ImZ1enotZXMyNTYifQ.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlLm9yZyIsImF1ZCI6Imh0dHBzOi8vZmhpci5leGFtcGxlLm9yZy9yNCIsInN1YiI6InVzZXItMSIsImNsaWVudF9pZCI6ImZ1enotYXBwIiwic2NvcGUiOiJ1c2VyLyoucnMiLCJpYXQiOjE3NDk5OTk5NDAsImV4cCI6MTc1MDAwMzYwMCwianRpIjoiZnV6eiJ9.tH_Kfmnoe4txxk9PNpK4lsJcKJw_JCCVMnHmhEW2WTidcqDyR-D5xaz3g2dYfVtQmfsgbpOPu8WCobVtpL9szg
:methodGET"
:path/r4/Observation?code=1234
:schemehttps"/r4/Observation?code=1234*fhir.example.org2httpsRHTTP/1.1