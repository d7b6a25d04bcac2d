
¹"¶³GET

:authorityfhir.example.org
:methodGET'
:path/r4/Observation?patient=alice7
:schemehttps"/r4/Observation?patient=alice7*fhir.example.org2httpsRHTTP/1.1