
ï"íèGET

:authorityfhir.example.org
:methodGET
:path/r4/metadata
:schemehttps"/r4/metadata*fhir.example.org2httpsRHTTP/1.1