from services.dns.app import main

main()
