from pinet.services.dns.app import main

main()
